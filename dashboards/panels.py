"""Small builders over grafanalib so every panel gets the same datasource, units and layout.

Every panel queries the ``$datasource`` template variable, carries a unit and a description
that says what "bad" looks like; the tests check all three on the generated JSON.

Every dashboard has the mixins' ``cluster``, ``namespace``, ``job`` and ``instance``
variables, and every query is scoped by them (:func:`sel` for raw series, :func:`rec` for
recording rules, which have no ``instance``: they are deduplicated across exporter
replicas). Queries over raw series take one replica first (:func:`one`) before summing, so
two exporters watching one broker show the same numbers as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    SORT_ALPHA_ASC,
    TABLE_TARGET_FORMAT,
    Dashboard,
    DashboardLink,
    GridPos,
    Heatmap,
    Panel,
    RowPanel,
    Stat,
    StateTimeline,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

from alerts.settings import DEFAULTS

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
REPLICAS = DEFAULTS.replica_labels
# cluster and namespace are absent on many setups: their "All" is the regex .*, which also
# matches a missing label. job and instance always exist; "All" is the list of their values.
SCOPE = ('cluster=~"$cluster"', 'namespace=~"$namespace"', 'job=~"$job"')
INSTANCE = 'instance=~"$instance"'
SCOPE_METRIC = "celery_exporter_build_info"  # every exporter always serves it
SCHEMA_VERSION = 37  # Grafana 9.x+; older or newer Grafana migrates on import
WIDTH = 24  # Grafana's grid is 24 columns wide
REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def sel(metric: str, *matchers: str) -> str:
    """A raw series scoped by every dashboard variable: ``metric{matchers, cluster, ...}``."""
    return f"{metric}{{{', '.join([*matchers, *SCOPE, INSTANCE])}}}"


def rec(record: str, *matchers: str) -> str:
    """A recording rule scoped by cluster, namespace and job (records carry no instance)."""
    return f"{record}{{{', '.join([*matchers, *SCOPE])}}}"


def one(expr: str) -> str:
    """One series per replica group: ``max without (instance, pod) (expr)``."""
    return f"max without ({REPLICAS}) ({expr})"


def rate(metric: str, *matchers: str, fn: str = "rate", window: str = RI) -> str:
    """The per-series rate (or increase) of a counter, one exporter replica counted."""
    return one(f"{fn}({sel(metric, *matchers)}[{window}])")


def target(expr: str, legend: str = "", instant: bool = False, table: bool = False) -> Target:
    """One PromQL query; refIds are assigned by :func:`_with_ref_ids`."""
    return Target(
        expr=expr,
        legendFormat=legend,
        instant=instant,
        format=TABLE_TARGET_FORMAT if table else "time_series",
        datasource=DATASOURCE,
        intervalFactor=1,
    )


def _with_ref_ids(targets: Sequence[Target]) -> list[Target]:
    for ref, item in zip(REF_IDS, targets, strict=False):
        item.refId = ref
    return list(targets)


def _steps(red_above: float | None) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_above is not None:
        steps.append({"color": "red", "value": red_above})
    return steps


def timeseries(
    title: str,
    description: str,
    targets: Sequence[Target],
    unit: str,
    axis_label: str = "",
    red_above: float | None = None,
    stacked: bool = False,
    width: int = 12,
    height: int = 8,
) -> TimeSeries:
    """A time series; ``red_above`` draws the alert threshold as a red line."""
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        unit=unit,
        axisLabel=axis_label,
        thresholds=_steps(red_above),
        thresholdsStyleMode="line" if red_above is not None else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        fillOpacity=20 if stacked else 0,
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        valueMin=0,
        maxDataPoints=None,  # let Grafana pick one point per pixel
        gridPos=GridPos(h=height, w=width, x=0, y=0),
    )


def stat(
    title: str,
    description: str,
    targets: Sequence[Target],
    unit: str,
    red_above: float | None = None,
    width: int = 6,
    height: int = 4,
    steps: list[dict[str, Any]] | None = None,
) -> Stat:
    """A big number; ``steps`` replaces the green/red-above thresholds."""
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        format=unit,
        reduceCalc="lastNotNull",
        noValue="0",
        graphMode="area",
        colorMode="value",
        color={"mode": "thresholds"},
        thresholds=steps or _steps(red_above),
        gridPos=GridPos(h=height, w=width, x=0, y=0),
    )


def state_timeline(
    title: str,
    description: str,
    targets: Sequence[Target],
    width: int = 12,
    height: int = 8,
) -> StateTimeline:
    """0/1 series (up, broker up) as red/green bands; unit ``bool_on_off`` reads "On"/"Off"."""
    return StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
        mergeValues=True,
        showValue="never",
        gridPos=GridPos(h=height, w=width, x=0, y=0),
        extraJson={"fieldConfig": {"defaults": {"unit": "bool_on_off", "min": 0, "max": 1}}},
    )


def table(
    title: str,
    description: str,
    targets: Sequence[Target],
    unit: str,
    width: int = 12,
    height: int = 8,
    columns: Sequence[str] = (),
) -> Table:
    """An instant-query table (one row per series), sorted by value, highest first.

    With several queries, ``columns`` names their value columns (in query order) and the rows
    are merged on their common labels.
    """
    transformations: list[dict[str, Any]] = []
    renames = {"Value": columns[0]} if len(columns) == 1 else {}
    if len(targets) > 1:
        transformations.append({"id": "merge", "options": {}})
        renames = {f"Value #{ref}": name for ref, name in zip(REF_IDS, columns, strict=False)}
    sort_field = columns[0] if columns else "Value"
    transformations += [
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, "__name__": True},
                "renameByName": renames,
            },
        },
        {"id": "sortBy", "options": {"sort": [{"field": sort_field, "desc": True}]}},
    ]
    return Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        unit=unit,
        gridPos=GridPos(h=height, w=width, x=0, y=0),
        transformations=transformations,
    )


def state_map_timeline(
    title: str,
    description: str,
    targets: Sequence[Target],
    states: Sequence[tuple[int, str, str]],
    width: int = 12,
    height: int = 8,
) -> StateTimeline:
    """Bands coloured by a numeric state: ``states`` are (value, text, colour)."""
    mappings = {str(value): {"text": text, "color": color, "index": i}
                for i, (value, text, color) in enumerate(states)}  # fmt: skip
    return StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        mergeValues=True,
        showValue="auto",
        gridPos=GridPos(h=height, w=width, x=0, y=0),
        extraJson={
            "fieldConfig": {
                "defaults": {
                    "unit": "none",
                    "color": {"mode": "thresholds"},
                    "mappings": [{"type": "value", "options": mappings}],
                }
            }
        },
    )


def heatmap(
    title: str,
    description: str,
    targets: Sequence[Target],
    y_unit: str,
    width: int = 12,
    height: int = 8,
) -> Heatmap:
    """A heatmap of pre-bucketed histogram counts (``sum by (le) (increase(..._bucket))``).

    grafanalib emits the legacy heatmap fields; the ``options`` below are those of Grafana
    9+'s heatmap, so the panel renders the buckets as they are (no re-bucketing) on both.
    """
    for item in targets:
        item.format = "heatmap"
    return Heatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        dataFormat="tsbuckets",
        yBucketBound="upper",
        hideZeroBuckets=True,
        gridPos=GridPos(h=height, w=width, x=0, y=0),
        extraJson={
            "yAxis": {"format": y_unit, "decimals": None, "logBase": 1, "show": True},
            "options": {
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential",
                          "exponent": 0.5, "steps": 64, "fill": "dark", "reverse": False},
                "yAxis": {"axisPlacement": "left", "unit": y_unit, "reverse": False},
                "rowsFrame": {"layout": "le"},
                "cellValues": {"unit": "short"},
                "tooltip": {"show": True, "yHistogram": False},
                "legend": {"show": True},
                "filterValues": {"le": 1e-9},
                "showValue": "never",
            },
            "fieldConfig": {"defaults": {"unit": "short"}},
        },
    )  # fmt: skip


def query_variable(name: str, label: str, query: str, all_value: str | None = ".*") -> Template:
    """A multi-select ``label_values`` variable; "All" is ``all_value`` (the regex ``.*``),
    or with ``None`` the alternation of every value the query found."""
    variable = Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=all_value,
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
        sort=SORT_ALPHA_ASC,
    )
    # Grafana's spelling of "All selected" for a multi-value variable.
    variable._current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return variable


def datasource_variable() -> Template:
    return Template(name="datasource", label="Data source", query="prometheus", type="datasource")


def scope_variables() -> list[Template]:
    """cluster, namespace, job, instance: each narrows the next one's values."""
    scope: list[str] = []
    variables = []
    for name, label, all_value in (
        ("cluster", "Cluster", ".*"),
        ("namespace", "Namespace", ".*"),
        ("job", "Job", None),
        ("instance", "Exporter", None),
    ):
        source = f"{SCOPE_METRIC}{{{', '.join(scope)}}}" if scope else SCOPE_METRIC
        variables.append(query_variable(name, label, f"label_values({source}, {name})", all_value))
        scope.append(f'{name}=~"${name}"')
    return variables


def layout(sections: Sequence[tuple[str, Sequence[Panel]]]) -> list[Panel]:
    """Rows of panels, flowed left to right and wrapped at the grid's width."""
    panels: list[Panel] = []
    y = 0
    for title, row in sections:
        panels.append(RowPanel(title=title, gridPos=GridPos(h=1, w=WIDTH, x=0, y=y)))
        y += 1
        x, line_height = 0, 0
        for panel in row:
            pos = panel.gridPos
            if x + pos.w > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panel.gridPos = GridPos(h=pos.h, w=pos.w, x=x, y=y)
            panels.append(panel)
            x += pos.w
            line_height = max(line_height, pos.h)
        y += line_height
    return panels


def dashboard(
    uid: str,
    title: str,
    description: str,
    sections: Sequence[tuple[str, Sequence[Panel]]],
    variables: Sequence[Template] = (),
) -> Dashboard:
    return Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=["celery", "celery-observatory"],
        timezone="browser",
        time=Time("now-1h", "now"),
        refresh="30s",
        graphTooltip=1,
        schemaVersion=SCHEMA_VERSION,
        templating=Templating(list=[datasource_variable(), *scope_variables(), *variables]),
        links=[
            DashboardLink(
                title="Celery dashboards",
                type="dashboards",
                tags=["celery-observatory"],
                asDropdown=True,
                includeVars=True,
                keepTime=True,
            )
        ],
        panels=layout(sections),
    ).auto_panel_ids()

"""Helpers the tests share: real processes (redis-server, Celery workers, the exporter) on free ports."""

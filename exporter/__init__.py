"""celery-observatory's Prometheus exporter for Celery: events and Redis queues to metrics."""

__version__ = "0.1.0"

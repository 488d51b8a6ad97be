"""The reference workload: the article's Celery tasks, configuration, dead-letter queue and API."""

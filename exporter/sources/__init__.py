"""Event sources: where Celery events come from. Both feed the same ``State``."""

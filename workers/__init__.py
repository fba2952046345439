"""What a worker needs to serve one task, free of Celery: providers on httpx, error classification and
retry policy, the Redis rate limiter, image storage. Depends on ``models`` only."""

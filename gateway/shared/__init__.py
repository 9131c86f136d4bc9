"""State shared beyond one worker process.

- `region`: a shared-memory region the supervisor creates before it forks
  the workers, so the workers of one instance share state without Redis
  (named segments, each with its own lock).
- `redis`: the Redis client built from `[redis]` (imported only when a URL
  is configured: a worker without Redis never loads redis-py) and the key
  naming every shared key follows.
"""

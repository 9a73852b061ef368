"""The scheduler role: cron-like jobs (daily backups) with one runner per job at a time."""

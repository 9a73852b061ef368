"""Message broker for tasks and events: RabbitMQ in production, in-process when embedded."""

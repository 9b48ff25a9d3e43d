"""The autoscaler: watches the load the workers already measure, decides how many workers
a model needs, and starts or drains workers through an actuator (local processes, Docker
Compose, or a command)."""

"""Operating streams: desired state and history, reconcile (control), health, status, alerts, maintenance."""

"""Adapters for the systems deploys are announced to: Slack's Web API and incoming webhooks
(`slack.py`), and Standard Webhooks receivers (`webhook.py`). Each speaks HTTP through `base.post`, which
maps every outside failure onto the two errors of `base.py` once."""

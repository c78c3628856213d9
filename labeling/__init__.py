"""Labeling: import/export formats, tasks and queues, annotations, agreement, accounts."""

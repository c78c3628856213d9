"""Fair turns in Gradio's event queue: one person's burst does not stall everyone else.

Gradio serves each handler's waiting events strictly oldest first, so 200 calls fired at once by one annotator
made another annotator wait 13.8 s behind them. `install` replaces that pick: from a handler's waiting events it
takes the one whose person (login name, else browser session) has the fewest events running now, the oldest among
equals. One person's own events still run in the order they were sent. Batched handlers keep Gradio's own pick.
"""
from __future__ import annotations

import random
from collections import Counter


def _who(event) -> str:
    return event.username or event.session_hash


def install(queue) -> None:
    """Make `queue` (a gradio.queueing.Queue, `demo._queue` after demo.queue()) pick fairly."""
    gradios_pick = queue.get_events

    def get_events():
        running = Counter(_who(e) for job in queue.active_jobs if job for e in job)
        ids = list(queue.event_queue_per_concurrency_id)
        random.shuffle(ids)                           # as Gradio does: no handler starves another
        for cid in ids:
            waiting = queue.event_queue_per_concurrency_id[cid]
            if not waiting.queue or (waiting.concurrency_limit is not None
                                     and waiting.current_concurrency >= waiting.concurrency_limit):
                continue
            if waiting.queue[0].fn.batch:
                return gradios_pick()
            i = min(range(len(waiting.queue)), key=lambda k: (running[_who(waiting.queue[k])], k))
            return [waiting.queue.pop(i)], False, cid
        return None

    queue.get_events = get_events

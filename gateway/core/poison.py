"""Which batch is poison: the rule that keeps one undeliverable batch from wedging the queue. Pure: times are passed in.

A batch can fail again and again without a permanent answer (the backend closes the connection on it, or answers
5xx, every time) while every other batch gets through. Retried at the head of the queue forever, it would hold
back everything behind it. A plain outage looks the same from one batch's point of view, so the rule asks for
proof that the link works:

* **suspect**: after ``suspect_after`` failures in a row, a batch stops blocking: the uplink sends the batches
  behind it first, and retries it on its own capped exponential delay instead of the link's backoff.
* **poison**: a batch is quarantined (``poison_batches``) once it has failed ``poison_after`` times *with the link
  proven between*: for each of those failures, another batch was acknowledged since its previous failure; and at
  least ``poison_min_s`` seconds after its first failure. In a plain outage nothing is acknowledged, so nothing
  becomes poison. Quarantined poison is kept, counted, and retried on the store's quarantine schedule.

State lives in memory (a restart forgets it, and the rule starts over), for at most ``max_tracked`` batches: the
oldest suspicion is forgotten first (that batch just blocks again for ``suspect_after`` failures).
"""

from dataclasses import dataclass

RETRY, SKIP, POISON = "retry", "skip", "poison"


@dataclass(slots=True)
class _Track:
    first: float  # when it first failed
    acks_seen: int  # the policy's ack count at its last failure
    fails: int = 0  # in a row
    proven: int = 0  # failures with another batch acknowledged since its previous failure
    not_before: float = 0.0  # a suspect is not retried before this
    store_id: int = None


class PoisonPolicy:
    def __init__(self, suspect_after=3, poison_after=5, poison_min_s=600.0, delay=(0.5, 300.0), max_tracked=256):
        if not 1 <= suspect_after <= poison_after:
            raise ValueError("need 1 <= suspect_after <= poison_after")
        self.suspect_after = suspect_after
        self.poison_after = poison_after
        self.poison_min_s = poison_min_s
        self.delay = delay
        self.max_tracked = max_tracked
        self.acks = 0
        self._tracks = {}

    def acked(self, key):
        self.acks += 1
        self._tracks.pop(key, None)

    def forget(self, key):
        self._tracks.pop(key, None)

    def failed(self, key, now, store_id=None):
        """Record a retryable failure of batch ``key``. Returns ``RETRY`` (back off, then try it again first),
        ``SKIP`` (it is suspect: go on with the other batches) or ``POISON`` (quarantine it)."""
        t = self._tracks.get(key)
        if t is None:
            if len(self._tracks) >= self.max_tracked:
                del self._tracks[min(self._tracks, key=lambda k: self._tracks[k].first)]
            t = self._tracks[key] = _Track(first=now, acks_seen=self.acks)
        t.store_id = store_id
        t.fails += 1
        if self.acks > t.acks_seen:
            t.proven += 1
        t.acks_seen = self.acks
        if t.proven >= self.poison_after and now - t.first >= self.poison_min_s:
            del self._tracks[key]
            return POISON
        if t.fails >= self.suspect_after:
            low, high = self.delay
            t.not_before = now + min(high, low * 2 ** min(t.fails - self.suspect_after, 32))
            return SKIP
        return RETRY

    def suspect(self, key):
        t = self._tracks.get(key)
        return t is not None and t.fails >= self.suspect_after

    def held(self, now):
        """``(key, store_id)`` of the suspects whose own retry delay has not run out: left out of this round."""
        return [(key, t.store_id) for key, t in self._tracks.items()
                if t.fails >= self.suspect_after and now < t.not_before]

    def order(self, batches):
        """Suspects go after the other batches (stable otherwise: alarms first, then oldest first)."""
        return sorted(batches, key=lambda b: self.suspect(b.key))

"""Import Gymnasium's toy-text MDPs (placeholder, filled in below)."""


def from_gymnasium(env_or_id, **kwargs):
    raise NotImplementedError

"""``make demo``: the app rollback shown end to end on a throwaway compose stack."""

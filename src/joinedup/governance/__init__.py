"""JoinedUp governance domain."""

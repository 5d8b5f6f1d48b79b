"""JoinedUp store domain."""

"""JoinedUp api domain."""

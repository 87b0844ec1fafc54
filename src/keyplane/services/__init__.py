"""Use cases. The only code that commits; invalidations are published after commit."""

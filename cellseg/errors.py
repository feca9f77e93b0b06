class UserError(Exception):
    """A user mistake: message is one line what/where/fix."""

"""Tables and matplotlib figures (matplotlib is imported inside the functions)."""

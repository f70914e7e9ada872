"""`lt_dist` subcommands: each module adds its parsers and calls the library."""

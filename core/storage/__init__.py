"""Storage: the store protocols, the SQL job store and its backends, migrations, blob stores."""

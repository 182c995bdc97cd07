"""Tenants: keys, accounts and their store, limits and quotas, fair scheduling."""

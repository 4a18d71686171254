"""Durable weaves (``weave(journal=PATH)``): what each call produced, kept across the driver's death."""

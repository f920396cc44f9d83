"""Thin Reflex State classes: they call services and hold view dataclasses, never ORM rows."""

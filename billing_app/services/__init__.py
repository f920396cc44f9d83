"""Business logic. Every function takes a DB session first and never imports Reflex."""

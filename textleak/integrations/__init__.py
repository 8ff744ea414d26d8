"""Hooks into training frameworks (transformers' Trainer)."""

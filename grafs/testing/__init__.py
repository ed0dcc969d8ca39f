"""Test helpers shipped with grafs (random-expression fuzzing: :mod:`grafs.testing.fuzz`)."""

"""Checks for the exercise notebooks, one module per chapter (``lm4f.exercises.ch03`` ...).

Each check prints a one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint when the
answer is wrong, so an untouched stub fails and a solution passes.
"""

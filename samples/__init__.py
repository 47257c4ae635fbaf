"""The embedded sample model (tiny-llama/), installed as the package `convkit_samples`.

setup.py maps the package name onto this directory, so the one copy in the repository
reaches every install (editable, wheel, sdist); convkit.samples finds it.
"""

"""Experiments: the Sacred run, its record, the run store and the sweeps (README: Layout)."""
import warnings

# Sacred 0.8.7 imports pkg_resources, which setuptools (pinned <81 for it) marks deprecated.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

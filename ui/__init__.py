"""Streamlit-side helpers shared by ``dashboard.py`` and the pages: cached loaders, session state, rendering.

The method lives in ``engine``; this package only loads, remembers and draws.
"""

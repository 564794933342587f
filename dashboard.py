"""SAE post-intervention recovery lab: ``streamlit run dashboard.py``.

Entry point only: the page list and the sidebar (model/SAE picker, status, presenter mode). Each step of the
method is one thin page in ``app_pages/``; the method itself lives in ``engine``.
"""

import logging

import streamlit as st

from ui.sidebar import render_sidebar

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

st.set_page_config(page_title="SAE recovery lab", page_icon="🧪", layout="wide")

PAGES = [
    st.Page("app_pages/pick.py", title="1 · Pick model and SAE", url_path="pick", default=True),
    st.Page("app_pages/features.py", title="2 · Features and clamp", url_path="features"),
    st.Page("app_pages/playground.py", title="2b · Playground", url_path="playground"),
    st.Page("app_pages/flips.py", title="3 · Flips and labels", url_path="flips"),
    st.Page("app_pages/recovery.py", title="4 · Recovery", url_path="recovery"),
    st.Page("app_pages/attribution.py", title="5 · Attribution", url_path="attribution"),
    st.Page("app_pages/runs.py", title="6 · Runs", url_path="runs"),
    st.Page("app_pages/study.py", title="7 · SAE quality study", url_path="study"),
]

page = st.navigation(PAGES)
render_sidebar()
page.run()

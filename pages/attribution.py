import streamlit as st

st.title("attribution")

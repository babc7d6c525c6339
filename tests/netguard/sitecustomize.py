"""Installs the test suite's network guard in Python subprocesses started by the tests (uvicorn, streamlit, the
CLI): tests/conftest.py puts this folder first on PYTHONPATH and names the attempts log in $KB_QA_NETGUARD_LOG."""

import os

if os.environ.get("KB_QA_NETGUARD_LOG"):
    import kb_qa_netguard

    kb_qa_netguard.install(log_to_file=True)

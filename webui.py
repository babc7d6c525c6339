"""The web page: chat with your knowledge bases, upload and manage documents.   Run: streamlit run webui.py

The page itself is the package kb_qa/webui/ (its __init__ lists the modules); this file is only the entry point
Streamlit runs. Settings: configs/default.yaml and KB_QA_* environment variables (see kb_qa/settings.py), e.g.
    KB_QA_LLM__MODEL_PATH=/models/chatglm2-6b streamlit run webui.py
"""

# Streamlit runs this file as "__main__". The parser's worker process (kb_qa.ingest.worker, started with spawn)
# re-imports the parent's __main__ file as "__mp_main__" before it serves: behind this guard it draws nothing there
# (and does not even import the page), so it neither loads the models a second time nor holds the first upload.
if __name__ == "__main__":
    from kb_qa.webui.page import main

    main()

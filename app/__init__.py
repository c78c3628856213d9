"""The Preflab app: one Gradio server (pages under app/pages), its supervisor of jobs, and the command line."""

"""The speech-llama Gradio Space: importance profiles, matrix explorer, Table 1, Layer-LR, try-it.

Modules: `folder` (what the artifact folder holds; the only files the UI can reach), `content`
(the default content built on first start), `views` (figures and tables, no Gradio), `uploads`
(audio upload checks with friendly messages), `tryit` (the model behind "Try it"), `handlers`
(the event handlers of every tab), `app` (the Gradio layout, its wiring and `launch`). Start it with ``speech-llama demo`` or ``python spaces_demo/app.py``.
"""

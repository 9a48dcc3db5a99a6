"""`speech-llama serve`: an OpenAI-compatible chat endpoint with continuous batching and streaming.

- `protocol`: the request and response shapes (pydantic in, dicts out) and their validation errors.
- `chat`: a request → the project's prompt and 16 kHz clip (`speech_llama.prompts.user_content`),
  with the server's limits; tokens → the answer's text, piece by piece.
- `scheduler`: the one thread that steps `speech_llama.batching.ContinuousBatcher` over all requests.
- `app`: the FastAPI routes; `server`: uvicorn in the foreground or on a background thread.

See docs/serving.md.
"""

from .app import ServeConfig, create_app
from .server import serve_forever, serving_in_background

__all__ = ["ServeConfig", "create_app", "serve_forever", "serving_in_background"]

"""The server as it batched /vqa before any-length batching, for bench/serve.py only.

    python -m bench.old_vqa_server --backbone DIR --port 8001 ...   (python -m server's flags)

Generated answers batch only with questions of the same token length (the batch key
holds the length), so no batch is ever padded: the old server's behaviour, on today's
code. Everything else is `python -m server`. Nothing outside bench/ can reach this.
"""

from __future__ import annotations

import sys

from adapters import predict
from server import app
from server.__main__ import main
from server.engine import Engine, Rows


class LengthKeyedEngine(Engine):
    async def vqa(self, pixels, ids, adapter, *, max_new_tokens=None, num_beams=None, keys=None) -> str:
        d = predict.decoding("vqa", num_beams, max_new_tokens)
        key = ("generate", d.num_beams, d.max_new_tokens, len(ids))  # + the question's token length
        return await self._submit("vqa", Rows(adapter, pixels=pixels, ids=ids, options=d, keys=keys), key)


if __name__ == "__main__":
    app.Engine = LengthKeyedEngine  # the lifespan builds `Engine` from server.app's namespace
    sys.exit(main(sys.argv[1:]))

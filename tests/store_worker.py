"""A writer process for the durability tests: commits documents with random vectors in a loop until killed.

python tests/store_worker.py STORE_ROOT KB_NAME N_COMMITS SEED
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kb_qa.schema import Chunk  # noqa: E402
from kb_qa.store import KnowledgeBase  # noqa: E402

DIM = 16


def main() -> None:
    root, name, commits, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(seed)
    kb = KnowledgeBase.open(root, name, create=True)
    for step in range(commits):
        with kb.writer(embedding_model="m", lock_timeout_s=30) as writer:
            for j in range(3):
                n = int(rng.integers(1, 40))
                vecs = rng.standard_normal((n, DIM)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                source = f"doc-{seed}-{step}-{j}.txt"
                chunks = [Chunk(text=f"{source} 第{k}段 text {k}", source=source, ordinal=k) for k in range(n)]
                writer.put_document(source, f"sha-{seed}-{step}-{j}", n, None, chunks, vecs)
            docs = [d.source for d in writer.documents()]
            if len(docs) > 6:
                writer.remove_document(docs[int(rng.integers(0, len(docs)))])
            writer.commit()
        print(step, flush=True)


if __name__ == "__main__":
    main()

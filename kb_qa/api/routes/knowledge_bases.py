"""Knowledge bases: list, create, show, delete; upload + ingest documents, list and remove them; search.

Every name that reaches the file system is checked before use: the KB name by `kb_name` (also refusing symlinked
KB folders), uploaded file names by `kb_qa.uploads` (sanitised, kept inside knowledge_base/<kb>/), document paths
by `validate_doc_path`/`safe_join`. Writes wait at most `ApiContext.lock_timeout_s` for a busy KB, then 409.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from kb_qa.api.context import Ctx, KBPath
from kb_qa.api.convert import sources_out
from kb_qa.api.errors import ApiError
from kb_qa.api.models import (
    Deleted,
    DocumentInfo,
    FileResult,
    IngestResult,
    KBCreate,
    KBInfo,
    SearchRequest,
    SearchResult,
    errors,
)
from kb_qa.naming import InvalidName, safe_join, validate_doc_path
from kb_qa.store import KnowledgeBaseNotFound

router = APIRouter(prefix="/knowledge_bases", tags=["knowledge bases"])

READ_BLOCK = 1 << 20  # bytes read from an uploaded file at a time


def _info(kb) -> KBInfo:
    i = kb.info()
    return KBInfo(name=i.name, documents=i.documents, chunks=i.chunks, embedding_model=i.embedding_model,
                  dimension=i.dimension)


@router.get("", response_model=list[KBInfo], summary="List knowledge bases")
def list_kbs(ctx: Ctx):
    out = []
    for name in ctx.app.kb_names():
        try:
            out.append(_info(ctx.app.kb(ctx.checked_kb_name(name))))
        except (KnowledgeBaseNotFound, InvalidName):  # deleted meanwhile, or a folder that is not ours
            continue
    return out


@router.post("", response_model=KBInfo, status_code=status.HTTP_201_CREATED, summary="Create a knowledge base",
             responses=errors(400, 409))
def create_kb(body: KBCreate, ctx: Ctx):
    name = ctx.checked_kb_name(body.name)
    if name in ctx.app.kb_names():
        raise ApiError(409, f"knowledge base {name!r} already exists", param="name", code="already_exists")
    return _info(ctx.app.kb(name, create=True))


@router.get("/{name}", response_model=KBInfo, summary="Show a knowledge base", responses=errors(400, 404))
def show_kb(name: KBPath, ctx: Ctx):
    return _info(ctx.app.kb(name))


@router.delete("/{name}", response_model=Deleted, summary="Delete a knowledge base", responses=errors(400, 404, 409),
               description="Deletes its index and records; with `delete_documents=true` also its stored "
                           "documents (knowledge_base/<name>/).")
def delete_kb(name: KBPath, ctx: Ctx, delete_documents: bool = False):
    ctx.app.delete_kb(name)
    if delete_documents:
        folder = Path(ctx.app.docs_root) / name
        # checked_kb_name ran just before: the folder is a real directory directly under the root (or absent).
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)  # rmtree removes symlinks found inside, never what they point to
    return Deleted(deleted=name)


@router.get("/{name}/documents", response_model=list[DocumentInfo], summary="List a knowledge base's documents",
            responses=errors(400, 404))
def list_documents(name: KBPath, ctx: Ctx):
    return [DocumentInfo(source=d.source, chunks=d.n_chunks, bytes=d.size, sha256=d.sha256, updated_at=d.updated_at)
            for d in ctx.app.kb(name).documents()]


@router.post("/{name}/documents", response_model=IngestResult, summary="Upload documents and ingest them",
             description="Multipart field `files`, one or more. The knowledge base is created if needed. Each file "
                         "gets a result (added/updated/unchanged/failed with the reason). A file over "
                         "ingest.max_file_mb refuses the whole request with 413 and stores nothing.",
             responses=errors(400, 409, 413, 503))
async def upload_documents(name: KBPath, ctx: Ctx, files: Annotated[list[UploadFile], File()]):
    max_bytes = int(ctx.app.settings.ingest.max_file_mb * 2**20)
    loaded: list[tuple[str, bytes]] = []
    for upload in files:
        data = bytearray()
        while block := await upload.read(READ_BLOCK):
            data += block
            if len(data) > max_bytes:
                raise ApiError(
                    413,
                    f"{upload.filename!r} is over the upload limit of {max_bytes / 2**20:g} MiB (ingest.max_file_mb);"
                    " nothing was stored", param="files", code="file_too_large")
        loaded.append((upload.filename or "", bytes(data)))
    report = await run_in_threadpool(ctx.app.add_uploads, name, loaded, lock_timeout_s=ctx.lock_timeout_s)
    return IngestResult(
        kb=report.kb, chunks_embedded=report.chunks_embedded, seconds=round(report.seconds, 3),
        files=[FileResult(source=o.source, status=o.status, chunks=o.chunks, reason=o.reason)
               for o in report.outcomes])


@router.delete("/{name}/documents/{source:path}", response_model=Deleted, summary="Remove a document",
               description="`source` is the document's path as the document list shows it. The document leaves "
                           "the index; its stored file (if kept in knowledge_base/<name>/) is deleted.",
               responses=errors(400, 404, 409))
def remove_document(source: str, name: KBPath, ctx: Ctx):
    if len(source.encode("utf-8", "surrogatepass")) > 4096:
        raise InvalidName("document path is too long")
    source = validate_doc_path(source)
    # Every check that can refuse (400) runs before anything is removed: a stored file that resolves outside the
    # knowledge base's folder (a planted symlink) refuses the request with the index and the file untouched.
    try:
        safe_join((Path(ctx.app.docs_root) / name).resolve(), source)
    except InvalidName:
        if source not in {d.source for d in ctx.app.kb(name).documents()}:
            raise ApiError(404, f"knowledge base {name!r} has no document {source!r}",
                           code="document_not_found") from None
        raise
    if not ctx.app.remove_document(name, source, lock_timeout_s=ctx.lock_timeout_s):
        raise ApiError(404, f"knowledge base {name!r} has no document {source!r}", code="document_not_found")
    return Deleted(deleted=source)


@router.post("/{name}/search", response_model=SearchResult, summary="Search (retrieval only, with scores)",
             responses=errors(400, 404, 409, 503))
def search(body: SearchRequest, name: KBPath, ctx: Ctx):
    started = time.perf_counter()
    hits = ctx.engine.search(name, body.query, top_k=body.top_k, score_threshold=body.score_threshold)
    return SearchResult(kb=name, query=body.query, results=sources_out(hits),
                        took_ms=round((time.perf_counter() - started) * 1000, 2))


"""Documents: list them and read one (read access); upload files into the corpus folder and delete
one (write access), each starting an index job whose version the hot reload then serves."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import JSONResponse

from service import writes
from service.access import read_access, write_access
from service.deps import HolderDep, IndexDep, JobsDep, SettingsDep
from service.errors import READ_ERRORS, WRITE_ERRORS
from service.schemas import DocumentDetail, DocumentList, DocumentSummary, ErrorResponse, JobAccepted

log = logging.getLogger("ragqa.service")
read_router = APIRouter(dependencies=[Depends(read_access)])
write_router = APIRouter(dependencies=[Depends(write_access)])


# --- reads ---------------------------------------------------------------------------------------


MAX_PAGE = 1000


@read_router.get("/v1/documents", response_model=DocumentList, responses=READ_ERRORS)
async def documents(
    index: IndexDep,
    offset: Annotated[int, Query(ge=0, description="documents to skip, in the store's order")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="the most documents to return")] = 100,
) -> DocumentList:
    """The documents with their chunk counts, a page at a time in the store's order (the order is the
    same on every call to one index version), with the total; an offset past the end gives an empty
    page."""
    page = index.documents(offset, offset + limit)
    return DocumentList(
        documents=[
            DocumentSummary(doc_id=d.doc_id, title=d.title, source=d.source, chunks=index.chunks_of(d.doc_id))
            for d in page
        ],
        total=index.document_count,
        offset=offset,
        limit=limit,
    )


@read_router.get(
    "/v1/documents/{doc_id:path}",
    response_model=DocumentDetail,
    responses={**READ_ERRORS, 404: {"model": ErrorResponse, "description": "no such document"}},
)
async def document(doc_id: str, index: IndexDep) -> DocumentDetail | JSONResponse:
    """One document's full text; ids may hold `/` and `#` (send them URL-encoded)."""
    found = index.find_document(doc_id)
    if found is None:
        return JSONResponse({"error": f"no document with id {doc_id!r}"}, status_code=404)
    return DocumentDetail(
        doc_id=found.doc_id,
        title=found.title,
        source=found.source,
        text=found.text,
        metadata=found.metadata,
    )


# --- writes: keyed -------------------------------------------------------------------------------


@write_router.post(
    "/v1/documents",
    status_code=202,
    response_model=JobAccepted,
    responses={
        **WRITE_ERRORS,
        400: {"model": ErrorResponse, "description": "an unusable file name"},
        413: {"model": ErrorResponse, "description": "too large"},
        415: {"model": ErrorResponse, "description": "unsupported file type"},
    },
)
async def upload(
    files: Annotated[list[UploadFile], File(description="one or more documents")],
    settings: SettingsDep,
    jobs: JobsDep,
) -> JobAccepted:
    """Store the files in the corpus folder and start an index job (202 with its id). Names may not
    hold folders; a file of the same name is replaced. Nothing is written unless every file is valid."""
    names = [writes.safe_name(f.filename) for f in files]
    if len(set(names)) != len(names):
        raise writes.UploadError(400, "two files have the same name")
    total = sum(f.size or 0 for f in files)
    if total > settings.max_upload_bytes:
        raise writes.UploadError(
            413, f"the files total {total} bytes; the limit is {settings.max_upload_bytes}"
        )
    settings.corpus.mkdir(parents=True, exist_ok=True)
    targets = [writes.inside(settings.corpus, name) for name in names]
    for file, target in zip(files, targets, strict=True):
        await _save(file, target)
    job = jobs.submit("upload", names)
    log.info("documents.uploaded", extra={"job_id": job.job_id, "files": names, "bytes": total})
    return JobAccepted(job_id=job.job_id, files=names)


@write_router.delete(
    "/v1/documents/{doc_id:path}",
    status_code=202,
    response_model=JobAccepted,
    responses={**WRITE_ERRORS, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
async def delete_document(
    doc_id: str, settings: SettingsDep, holder: HolderDep, jobs: JobsDep
) -> JobAccepted | JSONResponse:
    """Remove the document's file from the corpus folder and start an index job (202)."""
    root = settings.corpus.resolve()
    target = (root / doc_id).resolve()
    if not target.is_relative_to(root) or target == root:
        return JSONResponse(
            {"error": f"no document with id {doc_id!r} in the corpus folder"}, status_code=404
        )
    if not target.is_file():
        indexed = holder.ready and holder.current.find_document(doc_id) is not None
        message = (
            f"document {doc_id!r} is not a file of the corpus folder (it may come from a .jsonl "
            "file that holds other documents too: edit that file and upload it)"
            if indexed
            else f"no document with id {doc_id!r}"
        )
        return JSONResponse({"error": message}, status_code=409 if indexed else 404)
    target.unlink()
    job = jobs.submit("delete", [doc_id])
    log.info("documents.deleted", extra={"job_id": job.job_id, "doc_id": doc_id})
    return JobAccepted(job_id=job.job_id, files=[doc_id])


async def _save(file: UploadFile, target: Path) -> None:
    """Write the upload next to its target under a hidden name (never indexed), then move it into place:
    a reader of the corpus folder sees the whole file or none of it."""
    await file.seek(0)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with partial.open("wb") as out:
            while chunk := await file.read(1024 * 1024):
                out.write(chunk)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)

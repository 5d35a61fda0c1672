"""Hot statements compiled once: by Django once per database connection, and by PostgreSQL (prepared) too.

Building the SQL of a wide queryset (several select_related joins, annotations, a row lock) costs Django more CPU
than PostgreSQL needs to run it, and planning it costs PostgreSQL more than running it. When only one value changes
between runs (a device's id), the SQL Django compiled for a stand-in value is kept with its compiler, the value is
put where the stand-in was, the statement runs prepared, and the rows become model instances exactly as the
queryset's own iteration makes them (the compiler's converters and related populators).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators  # type: ignore[attr-defined]  # not in the stubs
from django.db.models.sql.compiler import SQLCompiler

M = TypeVar("M", bound=Model)
_NEVER_BY_COUNT = 2**31 - 1


class _PreparingCursor(psycopg.Cursor[Any]):
    """Server-side binding, prepared at first use on each connection: PostgreSQL plans the statement once per
    connection, not per request, and the client sends only the values. (Behind a transaction-pooling PgBouncer
    this needs its `max_prepared_statements`.)"""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        return super().execute(query, params, prepare=True, binary=binary)


def prepared_cursor() -> CursorWrapper:
    """A _PreparingCursor on Django's connection, wrapped as Django wraps its own (query log, execute wrappers)."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        if raw.prepare_threshold is None:
            # Django turns preparing off (None) for connection poolers, and psycopg then ignores prepare=True too.
            # Django's own cursors bind on the client and never prepare, so a threshold no query reaches enables
            # preparing for the cursors that ask for it (this one) and for no other.
            raw.prepare_threshold = _NEVER_BY_COUNT
        cursor = _PreparingCursor(raw)
    wrap = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    return wrap(cursor)  # type: ignore[arg-type]  # django-stubs say CursorWrapper; Django passes a DB-API cursor


@dataclass(frozen=True)
class _Compiled:
    compiler: SQLCompiler  # holds the select list and klass_info the rows are read with
    sql: str
    params: tuple[Any, ...]
    key_slot: int  # where the key goes among the params


class CompiledQuery(Generic[M]):
    """`build(key)` compiled once per connection (each thread has its own) and run with `key` substituted.

    `build` must yield the same SQL for every key (the key is one parameter, never something that changes the
    text): the stand-in must appear exactly once among the compiled parameters, or compiling refuses.
    """

    def __init__(self, build: Callable[[int], QuerySet[M]], *, stand_in: int) -> None:
        self._build = build
        self._stand_in = stand_in
        self._per_connection: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _Compiled] = weakref.WeakKeyDictionary()

    def _compiled(self, database: BaseDatabaseWrapper) -> _Compiled:
        compiled = self._per_connection.get(database)
        if compiled is None:
            queryset = self._build(self._stand_in)
            compiler = queryset.query.get_compiler(connection=database)
            sql, params = compiler.as_sql()
            slots = [i for i, param in enumerate(params) if type(param) is int and param == self._stand_in]
            if len(slots) != 1:
                raise RuntimeError(f"the stand-in key appears {len(slots)} times among the compiled parameters")
            compiled = _Compiled(compiler, sql, tuple(params), slots[0])
            self._per_connection[database] = compiled
        return compiled

    def __call__(self, key: int) -> list[M]:
        """The instances `build(key)` would yield, with their select_related rows and annotations."""
        compiled = self._compiled(connections[DEFAULT_DB_ALIAS])
        params = list(compiled.params)
        params[compiled.key_slot] = key
        with prepared_cursor() as cursor:
            cursor.execute(compiled.sql, params)
            rows = cursor.fetchall()
        return list(_instances(compiled.compiler, rows))


def _instances(compiler: SQLCompiler, rows: list[Any]) -> Iterator[Any]:
    """Model instances from the compiler's rows, as Django's ModelIterable makes them."""
    db = compiler.using
    select, klass_info, annotation_col_map = compiler.select, compiler.klass_info, compiler.annotation_col_map
    if klass_info is None:
        raise RuntimeError("a compiled query must select model instances")
    model_cls = klass_info["model"]
    fields = klass_info["select_fields"]
    start, end = fields[0], fields[-1] + 1
    init_list = [column[0].target.attname for column in select[start:end]]
    populators = get_related_populators(klass_info, select, db)
    for row in compiler.results_iter([rows]):
        obj = model_cls.from_db(db, init_list, row[start:end])
        for populator in populators:
            populator.populate(row, obj)
        for name, position in (annotation_col_map or {}).items():
            setattr(obj, name, row[position])
        yield obj

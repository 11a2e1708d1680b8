"""Patches to Taichi 1.7.4's Python frontend: the same kernel IR, built with less repeated work.

Taichi turns the path tracer's Python AST into its IR in every process, even when the compiled
kernel then comes from the offline cache: the cache key is a hash of that IR. It inlines a
ti.func by walking the function's AST again at every call site (679 walks, 32,700 node visits
for the path tracer), and around each walk and each node it redoes work whose result cannot
change within a process. Each patch below replaces one function of `taichi.lang` with one that
does the same work once, or more cheaply; none changes a statement of the IR, so the offline cache
key (a hash of the IR and the compile config, not of source positions) stays the same and a kernel
cached by an unpatched Taichi loads as it is. `apply()` installs them once per process, before the
first kernel is built, and only on Taichi PINNED: each copies parts of that version's source and
would be wrong for another one, which keeps its own code. tests/test_taichi_patches.py shows each
patch in effect and that a process without them finds the same kernels in the offline cache.
"""

from __future__ import annotations

import ast
import linecache
import sys
import textwrap

PINNED = (1, 7, 4)  # the Taichi whose functions these copy (taichi/lang/*.py of that release)

_applied: list[str] = []
# what each patch replaced ("module.name" -> Taichi's own function): for tests and benches that
# compare with Taichi's code
originals: dict[str, object] = {}
# what the tree reuse did this process: ASTs parsed (one per ti.func, plus one per nested call of
# a function whose tree was in use) and walks that reused a parsed tree; for tests and benches
tree_stats = {"parsed": 0, "reused": 0}


def apply() -> tuple[str, ...]:
    """Install every patch (once per process); returns the names in effect, () on another Taichi."""
    import taichi as ti

    if ti.__version__ != PINNED:
        return ()
    for patch in (_cheap_source_positions, _func_trees_once, _fast_builder_dispatch, _cheap_inside_class):
        if patch.__name__ not in _applied:
            patch()
            _applied.append(patch.__name__)
    return tuple(_applied)


def applied() -> tuple[str, ...]:
    return tuple(_applied)


def _cheap_source_positions() -> None:
    """Give Taichi's AST transformer a cheap source position for every node it visits.

    Replaces `ASTTransformerContext.get_pos_info` (taichi/lang/ast/ast_transformer_utils.py).
    For each AST node Taichi 1.7.4 first formats a caret-underlined, textwrap-ed excerpt of the
    source line, kept in case the node fails to compile: 0.6 of the 1.8 s a warm start took
    (issue 16's note). A kernel that fails to compile still gets the file, line and function in
    its error; only the underline goes. The text goes into DebugInfo, which the IR hash leaves out.
    """
    from taichi.lang.ast import ast_transformer_utils as atu

    def get_pos_info(self, node) -> str:
        return f'File "{self.file}", line {node.lineno + self.lineno_offset}, in {self.func.func.__name__}:\n'

    originals["ASTTransformerContext.get_pos_info"] = atu.ASTTransformerContext.get_pos_info
    atu.ASTTransformerContext.get_pos_info = get_pos_info


class _Tree:
    """A ti.func's parsed AST and each node's attributes as parsed, to put back after a walk."""

    __slots__ = ("tree", "saved", "busy")

    def __init__(self, text: str):
        self.tree = ast.parse(text)
        self.tree.body[0].decorator_list = []
        self.saved = [(n.__dict__, dict(n.__dict__)) for n in ast.walk(self.tree)]
        self.busy = False

    def restore(self) -> None:
        # a walk of a ti.func only adds attributes (1.7.4's transformer reassigns a parsed field
        # only in a kernel's walk, `node.args.args = []`): a node with as many as parsed is as parsed
        for attrs, parsed in self.saved:
            if len(attrs) != len(parsed):
                attrs.clear()
                attrs.update(parsed)
        self.busy = False


def _func_trees_once() -> None:
    """Read and parse each ti.func's source once per process, not once per call site.

    Replaces `kernel_impl._get_tree_and_ctx` and wraps `kernel_impl.transform_tree`
    (taichi/lang/kernel_impl.py). Taichi 1.7.4 inlines a ti.func by walking its AST again at every
    call site, and before each walk reads the function's source anew (inspect.getsourcelines
    tokenizes the file's lines), textwrap-fills every line and parses the text: 0.45 of the 1.3 s
    a warm start took for the reading, 0.14 s for the 679 parses. Sources do not change under a
    running process, so they are read once per function object. The tree is parsed once too: a
    walk only adds attributes to its nodes (`ptr`, the built value; `caller`, a method's object)
    and never changes a parsed field, so after each walk every node's attributes are put back as
    parsed and the next walk starts from the tree a fresh parse gives. A call of a function inside
    its own walk (an argument `f(f(x))` is built first, so only through a template callable) gets a
    fresh parse. Kernels and real functions (walked once, and a kernel's walk empties its argument
    list) are parsed fresh as before."""
    from taichi.lang import kernel_impl as ki

    sources: dict = {}
    trees: dict = {}  # function -> _Tree
    walking: dict[int, _Tree] = {}  # id(tree) -> its _Tree, while handed out for a walk

    def get_tree_and_ctx(self, excluded_parameters=(), is_kernel=True, arg_features=None, args=None,
                         ast_builder=None, is_real_function=False):  # fmt: skip
        got = sources.get(self.func)
        if got is None:
            file = ki.getsourcefile(self.func)
            src, start_lineno = ki.getsourcelines(self.func)
            src = [textwrap.fill(line, tabsize=4, width=9999) for line in src]
            got = sources[self.func] = (file, src, start_lineno, textwrap.dedent("\n".join(src)))
        file, src, start_lineno, text = got
        if is_kernel or is_real_function:
            tree = ast.parse(text)
            tree.body[0].decorator_list = []
        else:
            cached = trees.get(self.func)
            if cached is None or cached.busy:
                tree_stats["parsed"] += 1
                cached = _Tree(text)
                trees.setdefault(self.func, cached)
            else:
                tree_stats["reused"] += 1
            cached.busy = True
            tree = cached.tree
            walking[id(tree)] = cached
        global_vars = ki._get_global_vars(self.func)
        if is_kernel or is_real_function:  # template parameters go into the globals
            for i in self.template_slot_locations:
                global_vars[self.arguments[i].name] = args[i]
        return tree, ki.ASTTransformerContext(
            excluded_parameters=excluded_parameters, is_kernel=is_kernel, func=self,
            arg_features=arg_features, global_vars=global_vars, argument_data=args, src=src,
            start_lineno=start_lineno, file=file, ast_builder=ast_builder,
            is_real_function=is_real_function,
        )  # fmt: skip

    walk = ki.transform_tree

    def transform_tree(tree, ctx):
        cached = walking.pop(id(tree), None)
        try:
            return walk(tree, ctx)
        finally:
            if cached is not None:
                cached.restore()

    originals["kernel_impl._get_tree_and_ctx"] = ki._get_tree_and_ctx
    originals["kernel_impl.transform_tree"] = ki.transform_tree
    ki._get_tree_and_ctx = get_tree_and_ctx
    ki.transform_tree = transform_tree


def _fast_builder_dispatch() -> None:
    """Find each AST node's build method once per node class, and push its source position
    without a context-manager object.

    Replaces `Builder.__call__` (taichi/lang/ast/ast_transformer_utils.py), which for each of
    the 32,700 node visits of the path tracer concatenated "build_" + the class name, looked the
    method up, tested the node's class against ast.stmt/ast.expr, and entered a fresh
    SrcInfoGuard. The same steps in the same order, the error handling copied as it is."""
    import traceback

    from taichi.lang import impl
    from taichi.lang.ast import ast_transformer_utils as atu
    from taichi.lang.exception import TaichiCompilationError, TaichiSyntaxError, handle_exception_from_cpp

    methods: dict = {}  # (builder class, node class) -> (build method or None, node has a position)

    def __call__(self, ctx, node):
        key = (self.__class__, node.__class__)
        got = methods.get(key)
        if got is None:
            got = methods[key] = (
                getattr(self, "build_" + node.__class__.__name__, None),
                isinstance(node, (ast.stmt, ast.expr)),
            )
        method, positioned = got
        try:
            if method is None:
                error_msg = f'Unsupported node "{node.__class__.__name__}"'
                raise TaichiSyntaxError(error_msg)
            info = ctx.get_pos_info(node) if positioned else ""
            stack = impl.get_runtime().src_info_stack
            stack.append(info)
            try:
                return method(ctx, node)
            finally:
                stack.pop()
        except Exception as e:
            if impl.get_runtime().print_full_traceback:
                raise e
            if ctx.raised or not isinstance(node, (ast.stmt, ast.expr)):
                raise e.with_traceback(None)  # noqa: B904 (as 1.7.4 raises it)
            ctx.raised = True
            e = handle_exception_from_cpp(e)
            if not isinstance(e, TaichiCompilationError):
                msg = ctx.get_pos_info(node) + traceback.format_exc()
                raise TaichiCompilationError(msg) from None
            msg = ctx.get_pos_info(node) + str(e)
            raise type(e)(msg) from None

    originals["Builder.__call__"] = atu.Builder.__call__
    atu.Builder.__call__ = __call__


def _cheap_inside_class() -> None:
    """Read the decorated statement's line from linecache, not through inspect.getframeinfo.

    Replaces `kernel_impl._inside_class`, which every @ti.func and @ti.kernel calls at import
    to see whether the function is defined in a class body. For a module-level function the frame
    it reads is importlib's, in "<frozen importlib._bootstrap>", a file that does not exist, and
    inspect.getframeinfo then looks for its module by scanning sys.modules (inspect.getmodule has
    no shortcut for frames), twice: 3,000 entries for each of the 68 ti.funcs of kernels/, 0.04 s
    of their 0.05 s import. The same line, found as getframeinfo finds it: the start line of the
    frame's current instruction (its f_lineno before 3.11), in the lines linecache holds for the
    frame's file and module, clamped to the file; no lines, no class."""
    import itertools

    from taichi.lang import kernel_impl as ki

    patterns = ki._KERNEL_CLASS_STACKFRAME_STMT_RES

    def _inside_class(level_of_class_stackframe):
        try:
            frame = sys._getframe(level_of_class_stackframe)
            lineno = frame.f_lineno
            if sys.version_info >= (3, 11) and frame.f_lasti >= 0:
                start = next(itertools.islice(frame.f_code.co_positions(), frame.f_lasti // 2, None))[0]
                lineno = lineno if start is None else start
            filename = frame.f_code.co_filename
            linecache.checkcache(filename)
            lines = linecache.getlines(filename, frame.f_globals)
            first_statement = lines[max(0, min(lineno - 1, len(lines) - 1))].strip()
            for pat in patterns:
                if pat.match(first_statement):
                    return True
        except Exception:  # as 1.7.4's bare except: no source, no class
            pass
        return False

    originals["kernel_impl._inside_class"] = ki._inside_class
    ki._inside_class = _inside_class

"""nn.Module summaries: which constructor calls build which modules
(``nn.ReLU(inplace=True)``), ``nn.Sequential`` chains, ``self.<attr>`` modules of a class."""
from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Optional

from gradguard._findings.twins import MODULE_INPLACE_ARG
from gradguard.lint import tables as T
from gradguard.lint.classes import ScalarStores
from gradguard.lint.names import _is_true, _walk_statements
from gradguard.lint.values import Facts, InplaceFlag, ModuleInfo, SequentialHazard


class ModuleScanner:
    """Mixin of ``FileAnalyzer``: module constructors and whole-file call scans."""

    # Set by ``analysis.FileAnalyzer``, which these methods are part of.
    tree: ast.Module
    facts: Facts
    _modules_of_class: dict  # id(ClassDef) -> its ``_class_modules``, computed once
    _scalars_of_class: dict  # id(ClassDef) -> ``classes.ScalarStores`` result, from the same walk

    if TYPE_CHECKING:  # defined by ``analysis.FileAnalyzer``
        def qual(self, node: ast.AST, local: Optional[set[str]] = None) -> Optional[str]: ...

    def module_ctor(self, call: ast.Call, local: Optional[set] = None) -> Optional[ModuleInfo]:
        q = self.qual(call.func, local)
        if q is None or not q.startswith("torch.nn.") or q.count(".") != 2:
            return None
        cls = q.rsplit(".", 1)[1]
        if not cls[:1].isupper():
            return None
        if cls == "Sequential":
            items = tuple(self.module_ctor(i, local) if isinstance(i, ast.Call) else None
                          for i in self._sequential_items(call))
            return ModuleInfo(cls, False, call, None, items)
        kw = next((k for k in call.keywords if k.arg == "inplace"), None)
        inplace = kw is not None and _is_true(kw.value)
        text = "True"
        if kw is not None and cls in T.INPLACE_MODULES and not isinstance(kw.value, ast.Constant):
            # nn.ReLU(inplace=cfg.inplace): in place on every path where the value is true
            inplace, text = True, ast.unparse(kw.value)
        if cls == "Threshold" and len(call.args) >= 3 and _is_true(call.args[2]):
            inplace = True
        elif (cls in T.INPLACE_MODULES and cls != "Threshold" and call.args and _is_true(call.args[-1])
              and len(call.args) >= 1):
            # nn.ReLU(True), nn.Dropout(0.5, True), nn.LeakyReLU(0.2, True)
            positional_index = MODULE_INPLACE_ARG.get(cls)
            if positional_index is not None and len(call.args) == positional_index + 1:
                inplace = True
        return ModuleInfo(cls, inplace, call, kw if inplace else None, inplace_text=text)

    def _scan_calls(self) -> None:
        """nn.Sequential chains (GG107) and every ``inplace=True`` (GG402)."""
        stmt_calls: set[int] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                stmt_calls.add(id(node.value))
                f = node.value.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                    self.facts.stmt_call_attrs.add(f.attr)
            if not isinstance(node, ast.Call):
                continue
            kw = next((k for k in node.keywords if k.arg == "inplace" and _is_true(k.value)), None)
            if kw is not None:
                called = self.qual(node.func) or ""
                ctor = self.module_ctor(node)
                arg_temp = bool(node.args) and isinstance(node.args[0], ast.Call)
                self.facts.inplace_flags.append(InplaceFlag(node, kw, called.rsplit(".", 1)[-1] or "call",
                                                            id(node) in stmt_calls, arg_temp, ctor is not None))
            q = self.qual(node.func)
            if q == "torch.nn.Sequential":
                self._check_sequential(node)

    def _sequential_items(self, call: ast.Call) -> list:
        items = list(call.args)
        # nn.Sequential(OrderedDict([("a", nn.ReLU()), ...]))
        if len(items) == 1 and isinstance(items[0], ast.Call) and items[0].args:
            inner = items[0].args[0]
            if isinstance(inner, (ast.List, ast.Tuple)):
                items = [e.elts[1] for e in inner.elts if isinstance(e, ast.Tuple) and len(e.elts) == 2]
            elif isinstance(inner, ast.Dict):
                items = list(inner.values)
        return items

    def _check_sequential(self, call: ast.Call) -> None:
        saver: Optional[ModuleInfo] = None
        for item in self._sequential_items(call):
            info = self.module_ctor(item) if isinstance(item, ast.Call) else None
            if info is None:
                saver = None
                continue
            if info.inplace and saver is not None:
                self.facts.sequential.append(SequentialHazard(item, ast.unparse(saver.node.func), saver.node.lineno))
            if info.inplace:
                saver = info if info.saves_output else saver
            elif info.cls in T.PASSTHROUGH_MODULES:
                pass
            else:
                saver = info if info.saves_output else None

    # -- scopes -----------------------------------------------------------
    def _class_modules(self, cls: ast.ClassDef) -> dict:
        """``self.<attr> = nn.X(...)`` assignments anywhere in the class (read-only, shared)."""
        got = self._modules_of_class.get(id(cls))
        if got is None:
            got = self._modules_of_class[id(cls)] = self._scan_class_modules(cls)
        return got

    def _scan_class_modules(self, cls: ast.ClassDef) -> dict:
        found: dict[str, ModuleInfo] = {}
        scalars = ScalarStores()
        for fn in cls.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in _walk_statements(fn.body):
                scalars.note(node, fn)
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.value, ast.Call)):
                    t = node.targets[0]
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        info = self.module_ctor(node.value)
                        if info is not None:
                            if t.attr in found and found[t.attr].cls != info.cls:
                                found[t.attr] = ModuleInfo("?", False, node.value, None)  # ambiguous
                            else:
                                found[t.attr] = info
        self._scalars_of_class[id(cls)] = scalars.result()
        return {k: v for k, v in found.items() if v.cls != "?"}



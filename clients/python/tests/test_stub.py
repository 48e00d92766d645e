"""The type stub (_native.pyi) says what the extension module really has:
every public name and every method's parameters, as `inspect` reads them
from the compiled module, so an editor's view cannot drift from the code."""

import ast
import inspect
from pathlib import Path

import fastworker._native as native

STUB = Path(native.__file__).with_name("_native.pyi")
if not STUB.is_file():  # an editable install keeps the stub beside the sources
    STUB = Path(__file__).resolve().parents[1] / "python" / "fastworker" / "_native.pyi"

# Classes the stub adds for type checkers only: they exist in no module.
STUB_ONLY = {"SubmitOptions"}


def stub_classes():
    tree = ast.parse(STUB.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name not in STUB_ONLY:
            members = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members[item.name] = item.args
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = None
            classes[node.name] = members
    return classes


def stub_parameters(arguments):
    """(name, kind) of each parameter but self, as inspect names kinds."""
    params = [(a.arg, "POSITIONAL_OR_KEYWORD") for a in arguments.posonlyargs + arguments.args][1:]
    if arguments.vararg:
        params.append((arguments.vararg.arg, "VAR_POSITIONAL"))
    params += [(a.arg, "KEYWORD_ONLY") for a in arguments.kwonlyargs]
    if arguments.kwarg:
        params.append((arguments.kwarg.arg, "VAR_KEYWORD"))
    return params


def native_parameters(function):
    signature = inspect.signature(function)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    return [(p.name, p.kind.name.replace("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")) for p in params]


def test_every_public_class_of_the_extension_is_in_the_stub_and_back():
    classes = stub_classes()
    public = {name for name, value in vars(native).items() if isinstance(value, type) and not name.startswith("_")}
    assert public == set(classes), f"extension: {sorted(public)}, stub: {sorted(classes)}"


def test_every_method_has_the_extension_s_parameters():
    for class_name, members in stub_classes().items():
        cls = getattr(native, class_name)
        public = {name for name in dir(cls) if not name.startswith("_")}
        named = {name for name in members if not name.startswith("_")}
        assert public == named, f"{class_name}: extension {sorted(public)}, stub {sorted(named)}"
        for name, arguments in members.items():
            if name == "__init__":
                assert native_parameters(cls) == stub_parameters(arguments), f"{class_name}()"
                continue
            if arguments is None:
                assert not callable(getattr(cls, name)), f"{class_name}.{name} is a method in the extension"
                continue
            method = getattr(cls, name)
            assert native_parameters(method) == stub_parameters(arguments), f"{class_name}.{name}"



def test_keyword_options_are_checked_as_python_checks_keywords():
    # Refused before anything is sent, so no control plane is needed.
    client = native.Client("tcp://127.0.0.1:9", timeout=1.0)
    try:
        client.call("add", [1, 2], prioritty="high")
    except TypeError as error:
        assert "unexpected keyword argument 'prioritty'" in str(error)
    else:
        raise AssertionError("an unknown keyword was accepted")
    try:
        client.delay("add", [1, 2], countdown="soon")
    except TypeError as error:
        assert "'countdown'" in str(error)
    else:
        raise AssertionError("a countdown of the wrong type was accepted")

"""nutpie's compiled model of a PyMC model, with the machine code of its C entry points cached.

nutpie samples a PyMC model through two C functions made with numba: the log density with its
gradient, and the "expand" function that computes each draw's deterministics. Each wraps a
PyTensor function compiled by PyTensor's numba backend, whose machine code PyTensor caches on
disk (``~/.pytensor``). nutpie's own wrappers (``nutpie.compile_pymc_model``, nutpie 0.16) are
not cacheable: they read the data containers' arrays as compile-time constants, so numba
compiles them again in every process, and compiling a wrapper links in the whole PyTensor
function and optimises it and generates its machine code afresh. For the national-size
event-time model that was most of its compile time, paid in every run (``docs/benchmarks.md``,
section "nutpie's wrappers cached (``bayesfed.sampling.compiled``)").

:func:`compile_model` makes the same two wrappers from generated source that reads the data
only through nutpie's table of pointers, sizes and shapes (``user_data``: 64-bit unsigned
integers, the data pointers, then the sizes, then the shapes, in the order of
``shared_var_keys``), and registers them with PyTensor's numba cache under a key made of the
PyTensor function's own cache key and the wrapper's source. A later compilation of the same
graph, in any process, loads both from the cache. The result is nutpie's own
``CompiledPyMCModel``, so ``with_data`` and ``nutpie.sample`` work as with nutpie's
compilation; the wrappers return nutpie's codes (0 ok, 1 an exception, 3 a non-finite gradient,
4 a non-finite density; expand: -2 an exception), and the log density is the same PyTensor
function, so the draws are the same bits (tested in ``tests/test_compiled.py``). Before
returning, :func:`compile_model` calls both once: numba compiles the object-mode block of
PyTensor's matrix products (its look-up of scipy's BLAS) on first use, and that belongs to
compiling, not to the first sampling of the process.

It builds on nutpie's internals (``_make_functions``, ``make_user_data``,
``_prepare_dims_and_coords``, ``CompiledPyMCModel``, ``address_as_void_pointer``,
``_wrap_with_lock``), hence the pin ``nutpie<0.17`` in
``pyproject.toml``. Where the PyTensor function has no cache key (a graph with an operation
PyTensor cannot cache), PyTensor's numba cache is off or nutpie's table has another layout, it
compiles with ``nutpie.compile_pymc_model``: slower, same draws.
"""

from __future__ import annotations

import ctypes
import hashlib
import warnings

import numba
import numpy as np
import nutpie
import nutpie.compile_pymc as nutpie_pymc
import pymc as pm
import pytensor
from numba.core import types
from pymc.initial_point import make_initial_point_fn
from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS, compile_numba_function_src

#: Changes whenever the generated source's meaning changes without its text changing.
WRAPPER_VERSION = 2

_LOGP = """\
def nutpie_logp(dim, x_, out_, logp_, user_data_):
    if dim != {n_dim}:
        return -1
    try:
        x = carray(x_, ({n_dim},))
        out = carray(out_, ({n_dim},))
        logp = carray(logp_, ())
        table = carray(user_data_, ({n_table},), np.uint64)
{unpack}
        logp_value, grad = FUNCTION(x{args})
        logp[()] = logp_value
        out[...] = grad
        if not np.all(np.isfinite(out)):
            return 3
        if not np.isfinite(logp_value):
            return 4
    except Exception:
        return 1
    return 0
"""

_EXPAND = """\
def nutpie_expand(dim, expanded, x_, out_, user_data_):
    if dim != {n_dim}:
        return -1
    if expanded != {n_expanded}:
        return -1
    try:
        x = carray(x_, ({n_dim},))
        out = carray(out_, ({n_expanded},))
        table = carray(user_data_, ({n_table},), np.uint64)
{unpack}
        (values,) = FUNCTION(x{args})
        out[...] = values
    except Exception:
        return -2
    return 0
"""

_LOGP_SIGNATURE = types.int64(types.uint64, types.CPointer(types.double),
                              types.CPointer(types.double), types.CPointer(types.double),
                              types.voidptr)
_EXPAND_SIGNATURE = types.int64(types.uint64, types.uint64, types.CPointer(types.double),
                                types.CPointer(types.double), types.voidptr)


def _table_layout(user_data: np.ndarray, keys: list[str]) -> dict[str, tuple[int, int, int]]:
    """Where each data container's pointer, size and first dimension sit in nutpie's table.

    Returns
    -------
    dict
        Key -> (index of the pointer, index of the size, index of the first dimension), in
        units of 64-bit integers; empty if the table is not a packed run of 64-bit unsigned
        integers laid out as the module docstring says.
    """
    layout = {}
    fields = user_data.dtype["shared"]
    offset = user_data.dtype.fields["shared"][1]
    for i, key in enumerate(keys):
        where = []
        for part in ("data", "size", "shape"):
            dtype, start = fields[part].fields[key][:2]
            base = dtype.base if dtype.shape else dtype
            if base.kind != "u" or base.itemsize != 8:
                return {}
            where.append(offset + fields.fields[part][1] + start)
        if any(byte % 8 for byte in where):
            return {}
        layout[key] = tuple(byte // 8 for byte in where)
    n = len(keys)
    if user_data.dtype.itemsize % 8 or any(
            layout[key][:2] != (i, n + i) for i, key in enumerate(keys)):
        return {}
    return layout


def _wrapper(name: str, template: str, function, shared: list, keys: dict, layout: dict,
             n_table: int, signature, **sizes):
    """The C function ``name`` made with numba from ``template`` around the PyTensor function
    ``function`` (the jitted function of a compiled ``pytensor.function``) whose shared
    variables are ``shared``; cached by PyTensor's numba cache, or None where ``function``
    has no cache key or that cache is off (``pytensor.config.numba__cache``)."""
    function_key = CACHED_SRC_FUNCTIONS.get(function.py_func)
    if function_key is None or not pytensor.config.numba__cache:
        return None
    unpack, args = [], ""
    for i, var in enumerate(shared):
        pointer, size, shape = layout[keys[var]]
        dims = ", ".join(f"table[{shape + k}]" for k in range(var.type.ndim))
        dtype = np.dtype(var.type.dtype).name
        array = f"carray(_as_pointer(table[{pointer}]), (table[{size}],), np.{dtype})"
        if var.type.ndim:
            array = f"{array}.reshape(({dims},))"
        else:
            array = f"carray(_as_pointer(table[{pointer}]), (), np.{dtype})"
        unpack.append(f"        shared_{i} = {array}")
        args += f", shared_{i}"
    source = template.format(unpack="\n".join(unpack), args=args, n_table=n_table, **sizes)
    # the module's name too: a cached entry refers to this module by name, so one cached
    # under another name (before a move) must not be found
    key = hashlib.sha256(f"{WRAPPER_VERSION}\n{__name__}\n{function_key}\n{source}".encode()
                         ).hexdigest()
    python_function = compile_numba_function_src(
        source, name, {"__name__": __name__, "np": np, "carray": numba.carray,
                       "_as_pointer": nutpie_pymc.address_as_void_pointer, "FUNCTION": function},
        cache_key=key)
    return numba.cfunc(signature, cache=True)(python_function)


def compile_model(model: pm.Model):
    """nutpie's compiled model of ``model``, its C entry points cached (module docstring).

    Compile under the PyTensor flags the sampler will use (``bayesfed.sampling.nuts`` turns numba's
    fast-math off): they are part of the cache key.

    Parameters
    ----------
    model : pm.Model

    Returns
    -------
    nutpie.compile_pymc.CompiledPyMCModel
        What ``nutpie.compile_pymc_model(model)`` returns: same initial points (support
        points, jittered), same log density, same draws.
    """
    # one thread at a time: nutpie calls it from each chain's thread. PyTensor's C backend
    # compiles it, and warns that it has no BLAS when the graph has a product (the LKJ prior's
    # support point, bayesfed.modelling.random_slopes): irrelevant for one call a chain.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS",
                                category=UserWarning)
        initial_point = nutpie_pymc._wrap_with_lock(make_initial_point_fn(
            model=model, overrides=None, default_strategy="support_point",
            jitter_rvs=set(model.free_RVs), return_transformed=True))
    (n_dim, n_expanded, logp_function, expand_function, initial_point_function, shape_info,
     reparameterized) = nutpie_pymc._make_functions(
        model, mode="NUMBA", compute_grad=True, join_expanded=True,
        pymc_initial_point_fn=initial_point)
    keys, data = {}, {}
    for var in [*logp_function.get_shared(), *expand_function.get_shared()]:
        if var not in keys:
            keys[var] = f"shared_{len(keys)}"
            data[keys[var]] = np.array(var.get_value(), order="C", copy=True)
            data[keys[var]].flags.writeable = False
    user_data = nutpie_pymc.make_user_data(keys, data)
    layout = _table_layout(user_data, list(keys.values()))
    n_table = user_data.dtype.itemsize // 8
    logp = expand = None
    if layout:
        logp = _wrapper("nutpie_logp", _LOGP, logp_function.vm.jit_fn,
                        logp_function.get_shared(), keys, layout, n_table, _LOGP_SIGNATURE,
                        n_dim=n_dim)
        expand = _wrapper("nutpie_expand", _EXPAND, expand_function.vm.jit_fn,
                          expand_function.get_shared(), keys, layout, n_table,
                          _EXPAND_SIGNATURE, n_dim=n_dim, n_expanded=n_expanded)
    if logp is None or expand is None:
        return _call_once(nutpie.compile_pymc_model(model))
    dims, coords = nutpie_pymc._prepare_dims_and_coords(model, shape_info, reparameterized)
    return _call_once(nutpie_pymc.CompiledPyMCModel(
        _n_dim=n_dim,
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info)},
        compiled_logp_func=logp,
        compiled_expand_func=expand,
        initial_point_func=initial_point_function,
        shared_data=data,
        shared_var_keys=keys,
        user_data=user_data,
        n_expanded=n_expanded,
        shape_info=shape_info,
        logp_func=logp_function,
        expand_func=expand_function,
        reparameterized_names=reparameterized,
    ))


def _call_once(compiled):
    """``compiled``, after one call of each C entry point at its initial point (seed 0).

    numba compiles an object-mode block (PyTensor's look-up of scipy's BLAS functions, used by
    every matrix product) on its first call, so without this call the first sampling of a
    process paid that compilation inside the sampler (``docs/benchmarks.md``, section
    "nutpie's floor, and compilation out of the first sampling (``bench/peers.py``)"):
    compiling is done here. The values are not used.
    """
    double = ctypes.POINTER(ctypes.c_double)
    x = np.ascontiguousarray(compiled.initial_point_func(0), dtype=np.float64)
    grad, logp = np.empty(compiled.n_dim), np.empty(())
    expanded = np.empty(compiled.n_expanded)
    table = ctypes.c_void_p(compiled.user_data.ctypes.data)
    compiled.compiled_logp_func.ctypes(compiled.n_dim, x.ctypes.data_as(double),
                                       grad.ctypes.data_as(double), logp.ctypes.data_as(double),
                                       table)
    compiled.compiled_expand_func.ctypes(compiled.n_dim, compiled.n_expanded,
                                         x.ctypes.data_as(double),
                                         expanded.ctypes.data_as(double), table)
    return compiled

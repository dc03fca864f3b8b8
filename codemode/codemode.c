/*
 * codemode.c: a tiny QuickJS-ng driver for "code mode", built as a WASI
 * reactor module (no main; the host calls the exports).
 *
 * Host ABI (core wasm, not the component model):
 *
 * exports
 *   cm_alloc(len) -> ptr             malloc in the guest, for the host to write input
 *   cm_free(ptr)
 *   cm_init()                        create the JS runtime and context (optional:
 *                                    cm_run does it too; a pre-initialiser such
 *                                    as wizer runs it at build time)
 *   cm_run(src_ptr, src_len, tools_ptr, tools_len, mem_limit, stack_limit, max_output) -> i32
 *       src:   the agent's program, the body of an async function (top-level
 *              `await` and `return` allowed)
 *       tools: JSON array of tool names, each becomes `tools[name](args)`
 *       mem_limit:  QuickJS heap limit in bytes (0: none)
 *       stack_limit: QuickJS stack limit in bytes (0 or too large: clamped to
 *                    the shadow stack left, less 64 KiB)
 *       max_output: cap of the JSON envelope and of the console log, in bytes
 *       returns 0 on success (envelope ok=true) or 1 (envelope ok=false), the
 *       envelope itself via cm_output_ptr()/cm_output_len()
 *   cm_output_ptr() -> ptr, cm_output_len() -> len
 *
 * imports (module "codemode")
 *   tool_start(name_ptr, name_len, args_ptr, args_len) -> i32
 *       starts a tool call with JSON arguments; >= 0 call id, < 0 refused
 *       (reported to the program as "tool call NAME refused by the host (N)")
 *   tool_wait(out_ptr) -> i32
 *       blocks until one started call has finished; writes {id, status, len}
 *       (3 x u32, status 0 = ok, 1 = error) and returns 0, or -1 if no call
 *       is outstanding
 *   tool_read(id, buf_ptr, len) -> i32
 *       copies the finished call's JSON result (or error message) to buf;
 *       returns the number of bytes written
 *   now_ms() -> f64
 *       the only clock the script sees (Date.now(), new Date())
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>
#include "quickjs.h"

#define IMPORT(n) __attribute__((import_module("codemode"), import_name(n)))
#define EXPORT(n) __attribute__((export_name(n)))

IMPORT("tool_start") int32_t host_tool_start(const char *name, uint32_t name_len,
                                             const char *args, uint32_t args_len);
IMPORT("tool_wait") int32_t host_tool_wait(uint32_t *out);
IMPORT("tool_read") int32_t host_tool_read(int32_t id, char *buf, uint32_t len);
IMPORT("now_ms") double host_now_ms(void);

/* ---- no WASI: the clock comes from the host, everything else is absent ----
 * wasi-libc calls these imported functions; defining them here resolves the
 * symbols inside the module, so the module imports nothing from WASI. */
#include <wasi/api.h>
int32_t __imported_wasi_snapshot_preview1_clock_time_get(int32_t id, int64_t precision,
                                                         int32_t out)
{
    (void)id; (void)precision;
    double ms = host_now_ms();
    *(uint64_t *)(uintptr_t)out = (uint64_t)(ms * 1e6);
    return 0;
}
int32_t __imported_wasi_snapshot_preview1_fd_write(int32_t fd, int32_t iovs, int32_t n,
                                                   int32_t out)
{
    /* stdout/stderr go nowhere (QuickJS only prints in debug dumps) */
    const __wasi_ciovec_t *v = (const __wasi_ciovec_t *)(uintptr_t)iovs;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += v[i].buf_len;
    *(uint32_t *)(uintptr_t)out = (uint32_t)total;
    (void)fd;
    return 0;
}
int32_t __imported_wasi_snapshot_preview1_fd_close(int32_t fd) { (void)fd; return __WASI_ERRNO_BADF; }
int32_t __imported_wasi_snapshot_preview1_fd_seek(int32_t fd, int64_t off, int32_t wh, int32_t out)
{ (void)fd; (void)off; (void)wh; (void)out; return __WASI_ERRNO_BADF; }
int32_t __imported_wasi_snapshot_preview1_fd_fdstat_get(int32_t fd, int32_t out)
{ (void)fd; (void)out; return __WASI_ERRNO_BADF; }
_Noreturn void __imported_wasi_snapshot_preview1_proc_exit(int32_t code)
{ (void)code; __builtin_trap(); }

/* ---- output buffer ---- */
static char *g_out;
static size_t g_out_len;

EXPORT("cm_alloc") void *cm_alloc(uint32_t len) { return malloc(len ? len : 1); }
EXPORT("cm_free") void cm_free(void *p) { free(p); }
EXPORT("cm_output_ptr") const char *cm_output_ptr(void) { return g_out; }
EXPORT("cm_output_len") uint32_t cm_output_len(void) { return (uint32_t)g_out_len; }

/* ---- pending tool calls ---- */
#define MAX_PENDING 64
typedef struct { int32_t id; JSValue resolve, reject; } Pending;
static Pending g_pending[MAX_PENDING];
static int g_npending;

/* console.log lines, bounded */
static JSValue g_logs;
static size_t g_log_bytes, g_max_output;
static int g_logs_dropped;

static JSValue js_tool_call(JSContext *ctx, const char *name, size_t name_len, JSValueConst args)
{
    JSValue json = JS_JSONStringify(ctx, JS_IsUndefined(args) ? JS_NULL : args, JS_UNDEFINED, JS_UNDEFINED);
    if (JS_IsException(json))
        return JS_EXCEPTION;
    size_t args_len;
    const char *args_s = JS_ToCStringLen(ctx, &args_len, json);
    JS_FreeValue(ctx, json);
    if (!args_s)
        return JS_EXCEPTION;
    if (g_npending >= MAX_PENDING) {
        JS_FreeCString(ctx, args_s);
        return JS_ThrowRangeError(ctx, "too many tool calls in flight (max %d)", MAX_PENDING);
    }
    int32_t id = host_tool_start(name, (uint32_t)name_len, args_s, (uint32_t)args_len);
    JS_FreeCString(ctx, args_s);
    if (id < 0)
        return JS_ThrowPlainError(ctx, "tool call %.*s refused by the host (%d)", (int)name_len, name, (int)id);
    JSValue funcs[2];
    JSValue promise = JS_NewPromiseCapability(ctx, funcs);
    if (JS_IsException(promise))
        return promise;
    g_pending[g_npending].id = id;
    g_pending[g_npending].resolve = funcs[0];
    g_pending[g_npending].reject = funcs[1];
    g_npending++;
    return promise;
}

/* tools.<name>(args): func_data[0] is the tool's name */
static JSValue js_tool(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv,
                       int magic, JSValueConst *func_data)
{
    (void)this_val; (void)magic;
    size_t name_len;
    const char *name = JS_ToCStringLen(ctx, &name_len, func_data[0]);
    if (!name)
        return JS_EXCEPTION;
    JSValue r = js_tool_call(ctx, name, name_len, argc > 0 ? argv[0] : JS_UNDEFINED);
    JS_FreeCString(ctx, name);
    return r;
}

static JSValue js_console_log(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argv;
    if (g_log_bytes >= g_max_output / 2) { /* full: count, do no work */
        g_logs_dropped++;
        return JS_UNDEFINED;
    }
    /* join the arguments with spaces; non-strings through JSON.stringify */
    JSValue parts = JS_NewArray(ctx);
    for (int i = 0; i < argc; i++) {
        JSValue s;
        if (JS_IsString(argv[i]))
            s = JS_DupValue(ctx, argv[i]);
        else {
            s = JS_JSONStringify(ctx, argv[i], JS_UNDEFINED, JS_UNDEFINED);
            if (JS_IsException(s) || JS_IsUndefined(s)) {
                JS_FreeValue(ctx, JS_GetException(ctx));
                s = JS_ToString(ctx, argv[i]);
                if (JS_IsException(s)) { JS_FreeValue(ctx, parts); return s; }
            }
        }
        JS_SetPropertyUint32(ctx, parts, i, s);
    }
    JSValue join = JS_GetPropertyStr(ctx, parts, "join");
    JSValue sep = JS_NewString(ctx, " ");
    JSValue line = JS_Call(ctx, join, parts, 1, &sep);
    JS_FreeValue(ctx, sep); JS_FreeValue(ctx, join); JS_FreeValue(ctx, parts);
    if (JS_IsException(line))
        return line;
    size_t len;
    const char *s = JS_ToCStringLen(ctx, &len, line);
    if (s) JS_FreeCString(ctx, s);
    if (g_log_bytes + len > g_max_output / 2) {
        g_logs_dropped++;
        g_log_bytes = g_max_output / 2;
        JS_FreeValue(ctx, line);
    } else {
        g_log_bytes += len;
        uint32_t n;
        JSValue lenv = JS_GetPropertyStr(ctx, g_logs, "length");
        JS_ToUint32(ctx, &n, lenv);
        JS_FreeValue(ctx, lenv);
        JS_SetPropertyUint32(ctx, g_logs, n, line);
    }
    return JS_UNDEFINED;
}

static void set_output(const char *s, size_t len)
{
    free(g_out);
    g_out = malloc(len + 1);
    if (!g_out) { g_out_len = 0; return; }
    memcpy(g_out, s, len);
    g_out[len] = 0;
    g_out_len = len;
}

/* {"ok":false,"error":...} from the pending exception */
static int fail_with_exception(JSContext *ctx)
{
    JSValue exc = JS_GetException(ctx);
    JSValue env = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, env, "ok", JS_FALSE);
    JSValue msg = JS_ToString(ctx, exc);
    if (JS_IsException(msg)) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        msg = JS_NewString(ctx, "(unprintable exception)");
    }
    JS_SetPropertyStr(ctx, env, "error", msg);
    if (JS_IsError(exc)) {
        JSValue stack = JS_GetPropertyStr(ctx, exc, "stack");
        if (JS_IsString(stack))
            JS_SetPropertyStr(ctx, env, "stack", stack);
        else
            JS_FreeValue(ctx, stack);
    }
    JS_SetPropertyStr(ctx, env, "logs", JS_DupValue(ctx, g_logs));
    JS_FreeValue(ctx, exc);
    JSValue json = JS_JSONStringify(ctx, env, JS_UNDEFINED, JS_UNDEFINED);
    JS_FreeValue(ctx, env);
    size_t len = 0;
    const char *s = JS_IsException(json) ? NULL : JS_ToCStringLen(ctx, &len, json);
    if (s) {
        if (len > g_max_output) {
            static const char big[] = "{\"ok\":false,\"error\":\"the error report is larger than the output limit\"}";
            set_output(big, sizeof big - 1);
        } else
            set_output(s, len);
        JS_FreeCString(ctx, s);
    } else {
        /* out of memory while reporting: a fixed message */
        JS_FreeValue(ctx, JS_GetException(ctx));
        static const char oom[] = "{\"ok\":false,\"error\":\"InternalError: out of memory (while reporting an error)\"}";
        set_output(oom, sizeof oom - 1);
    }
    JS_FreeValue(ctx, json);
    return 1;
}

static int settle(JSContext *ctx, int32_t id, uint32_t status, const char *buf, size_t len)
{
    for (int i = 0; i < g_npending; i++) {
        if (g_pending[i].id != id)
            continue;
        Pending p = g_pending[i];
        g_pending[i] = g_pending[--g_npending];
        JSValue arg, fn;
        if (status == 0) {
            arg = JS_ParseJSON(ctx, buf, len, "<tool result>");
            fn = p.resolve;
            if (JS_IsException(arg)) {
                arg = JS_GetException(ctx);
                fn = p.reject;
            }
        } else {
            arg = JS_NewError(ctx);
            JS_SetPropertyStr(ctx, arg, "message", JS_NewStringLen(ctx, buf, len));
            fn = p.reject;
        }
        JSValue r = JS_Call(ctx, fn, JS_UNDEFINED, 1, (JSValueConst *)&arg);
        JS_FreeValue(ctx, arg);
        JS_FreeValue(ctx, p.resolve);
        JS_FreeValue(ctx, p.reject);
        if (JS_IsException(r))
            return -1;
        JS_FreeValue(ctx, r);
        return 0;
    }
    return 0; /* unknown id: ignore */
}

static JSContext *new_context(JSRuntime *rt)
{
    /* only the language: no std/os modules, no performance, no WeakRef */
    JSContext *ctx = JS_NewContextRaw(rt);
    if (!ctx) return NULL;
    JS_AddIntrinsicBaseObjects(ctx);
    JS_AddIntrinsicDate(ctx);
    JS_AddIntrinsicEval(ctx);
    JS_AddIntrinsicRegExp(ctx);
    JS_AddIntrinsicJSON(ctx);
    JS_AddIntrinsicProxy(ctx);
    JS_AddIntrinsicMapSet(ctx);
    JS_AddIntrinsicTypedArrays(ctx);
    JS_AddIntrinsicPromise(ctx);
    JS_AddIntrinsicBigInt(ctx);
    return ctx;
}

/* The runtime and context: made by cm_init, which a pre-initialiser (wizer)
   may run at build time so that each instance starts with them in its data
   segment; cm_run makes them itself otherwise. */
static JSRuntime *g_rt;
static JSContext *g_ctx;

static JSValue js_console_log(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv);

static int ensure_init(void)
{
    if (g_ctx)
        return 0;
    g_rt = JS_NewRuntime();
    if (!g_rt) return -1;
    g_ctx = new_context(g_rt);
    if (!g_ctx) return -1;
    JSValue global = JS_GetGlobalObject(g_ctx);
    JSValue console = JS_NewObject(g_ctx);
    JS_SetPropertyStr(g_ctx, console, "log", JS_NewCFunction(g_ctx, js_console_log, "log", 1));
    JS_SetPropertyStr(g_ctx, global, "console", console);
    JS_FreeValue(g_ctx, global);
    JS_RunGC(g_rt);
    return 0;
}

EXPORT("cm_init") void cm_init(void) { ensure_init(); }

EXPORT("cm_run")
int32_t cm_run(const char *src, uint32_t src_len, const char *tools, uint32_t tools_len,
               uint32_t mem_limit, uint32_t stack_limit, uint32_t max_output)
{
    g_max_output = max_output ? max_output : (1u << 20);
    g_log_bytes = 0;
    g_logs_dropped = 0;
    g_npending = 0;

    if (ensure_init() < 0) {
        static const char e[] = "{\"ok\":false,\"error\":\"cannot create the JS runtime\"}";
        set_output(e, sizeof e - 1);
        return 1;
    }
    JSRuntime *rt = g_rt;
    JSContext *ctx = g_ctx;
    JS_SetMemoryLimit(rt, mem_limit); /* 0: none */
    /* QuickJS's stack check sees the shadow stack (linear memory, below the
       data with --stack-first). Never let its limit reach past the bottom of
       that stack: keep 64 KiB for the C code that runs past the check. */
    {
        uintptr_t top = (uintptr_t)__builtin_frame_address(0);
        uintptr_t room = top > 65536 ? top - 65536 : 0;
        if (stack_limit == 0 || stack_limit > room)
            stack_limit = (uint32_t)room;
    }
    JS_SetMaxStackSize(rt, stack_limit); /* also takes the current stack top */

    int rc = 1;
    JSValue promise = JS_UNDEFINED, ret = JS_UNDEFINED;
    JSValue global = JS_GetGlobalObject(ctx);
    g_logs = JS_NewArray(ctx);

    /* tools.<name> for each name in the JSON array */
    JSValue tools_obj = JS_NewObject(ctx);
    JSValue names;
    {
        char *t = malloc((size_t)tools_len + 1); /* NUL-terminated copy */
        if (!t) { JS_ThrowOutOfMemory(ctx); rc = fail_with_exception(ctx); goto done; }
        memcpy(t, tools, tools_len);
        t[tools_len] = 0;
        names = JS_ParseJSON(ctx, t, tools_len, "<tools>");
        free(t);
    }
    if (JS_IsException(names)) { JS_FreeValue(ctx, tools_obj); rc = fail_with_exception(ctx); goto done; }
    {
        uint32_t n = 0;
        JSValue lenv = JS_GetPropertyStr(ctx, names, "length");
        JS_ToUint32(ctx, &n, lenv);
        JS_FreeValue(ctx, lenv);
        for (uint32_t i = 0; i < n; i++) {
            JSValue name = JS_GetPropertyUint32(ctx, names, i);
            const char *s = JS_ToCString(ctx, name);
            if (s) {
                JSValue f = JS_NewCFunctionData(ctx, js_tool, 1, 0, 1, (JSValueConst *)&name);
                JS_SetPropertyStr(ctx, tools_obj, s, f);
                JS_FreeCString(ctx, s);
            }
            JS_FreeValue(ctx, name);
        }
    }
    JS_FreeValue(ctx, names);
    JS_SetPropertyStr(ctx, global, "tools", tools_obj);

    /* the program is the body of an async function; one line of prefix so
       that line numbers in stacks are the program's (+0 after the wrapper) */
    {
        static const char pre[] = "(async () => {";
        static const char post[] = "\n})()";
        size_t n = sizeof pre - 1 + src_len + sizeof post - 1;
        char *code = malloc(n + 1);
        if (!code) { JS_ThrowOutOfMemory(ctx); rc = fail_with_exception(ctx); goto done; }
        memcpy(code, pre, sizeof pre - 1);
        memcpy(code + sizeof pre - 1, src, src_len);
        memcpy(code + sizeof pre - 1 + src_len, post, sizeof post - 1);
        code[n] = 0;
        promise = JS_Eval(ctx, code, n, "<program>", JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_STRICT);
        free(code);
    }
    if (JS_IsException(promise)) { rc = fail_with_exception(ctx); goto done; }

    /* the event loop: run jobs; when none are left and the program has not
       settled, wait for the host to finish a tool call */
    for (;;) {
        JSContext *c;
        for (;;) {
            int r = JS_ExecutePendingJob(rt, &c);
            if (r < 0) { rc = fail_with_exception(ctx); goto done; }
            if (r == 0) break;
        }
        JSPromiseStateEnum st = JS_PromiseState(ctx, promise);
        if (st == JS_PROMISE_FULFILLED) break;
        if (st == JS_PROMISE_REJECTED) {
            JS_Throw(ctx, JS_PromiseResult(ctx, promise));
            rc = fail_with_exception(ctx);
            goto done;
        }
        if (g_npending == 0) {
            JS_ThrowPlainError(ctx, "the program awaits something that can never settle");
            rc = fail_with_exception(ctx);
            goto done;
        }
        uint32_t info[3];
        if (host_tool_wait(info) != 0) {
            JS_ThrowPlainError(ctx, "host has no outstanding tool call");
            rc = fail_with_exception(ctx);
            goto done;
        }
        /* JS_ParseJSON wants a NUL after the text */
        char *buf = malloc((size_t)info[2] + 1);
        if (!buf) { JS_ThrowOutOfMemory(ctx); rc = fail_with_exception(ctx); goto done; }
        int32_t got = host_tool_read((int32_t)info[0], buf, info[2]);
        buf[got < 0 ? 0 : got] = 0;
        int r = settle(ctx, (int32_t)info[0], info[1], buf, got < 0 ? 0 : (size_t)got);
        free(buf);
        if (r < 0) { rc = fail_with_exception(ctx); goto done; }
    }

    /* {"ok":true,"result":...,"logs":[...]} */
    ret = JS_PromiseResult(ctx, promise);
    {
        JSValue env = JS_NewObject(ctx);
        JS_SetPropertyStr(ctx, env, "ok", JS_TRUE);
        JS_SetPropertyStr(ctx, env, "result", JS_IsUndefined(ret) ? JS_NULL : JS_DupValue(ctx, ret));
        JS_SetPropertyStr(ctx, env, "logs", JS_DupValue(ctx, g_logs));
        if (g_logs_dropped)
            JS_SetPropertyStr(ctx, env, "logs_dropped", JS_NewInt32(ctx, g_logs_dropped));
        JSValue json = JS_JSONStringify(ctx, env, JS_UNDEFINED, JS_UNDEFINED);
        JS_FreeValue(ctx, env);
        if (JS_IsException(json)) { rc = fail_with_exception(ctx); goto done; }
        size_t len;
        const char *s = JS_ToCStringLen(ctx, &len, json);
        JS_FreeValue(ctx, json);
        if (!s) { rc = fail_with_exception(ctx); goto done; }
        if (len > g_max_output) {
            JS_FreeCString(ctx, s);
            JS_ThrowRangeError(ctx, "the result is %zu bytes of JSON, over the limit of %zu", len, g_max_output);
            rc = fail_with_exception(ctx);
            goto done;
        }
        set_output(s, len);
        JS_FreeCString(ctx, s);
        rc = 0;
    }

done:
    /* release this run's values; the runtime and context themselves stay
       (an instance runs one program and is then dropped by the host) */
    for (int i = 0; i < g_npending; i++) {
        JS_FreeValue(ctx, g_pending[i].resolve);
        JS_FreeValue(ctx, g_pending[i].reject);
    }
    g_npending = 0;
    JS_FreeValue(ctx, ret);
    JS_FreeValue(ctx, promise);
    JS_FreeValue(ctx, g_logs);
    JS_FreeValue(ctx, global);
    /* the runtime is not freed: an instance runs one program and is then
       dropped whole by the host */
    return rc;
}

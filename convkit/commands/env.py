"""`convkit env`: what this install runs on (versions, compiled helpers, CPU features, torch
threads and devices), the lines to paste into a bug report."""
import click

from convkit.output import emit


def _yes(flag) -> str:
    return "yes" if flag else "no"


def format_env(info: dict) -> str:
    py, cpu, tch, helpers = info["python"], info["cpu"], info["torch"], info["helpers"]
    packages = ", ".join(f"{name} {version or '-'}" for name, version in info["packages"].items())
    built = ", ".join(f"{name} {'built' if ok else 'MISSING (' + helpers['cost_if_missing'][name] + ')'}"
                      for name, ok in helpers["built"].items())
    lines = [
        f"convkit {info['convkit']}",
        f"python: {py['version']} ({py['implementation']}) {py['executable']}",
        f"platform: {py['platform']}",
        f"packages: {packages}",
        f"compiled helpers: {built} ({helpers['isa']})",
    ]
    lines.append(f"cpu: {cpu['model'] or 'unknown'} ({cpu['machine']}, {cpu['usable_cores']} of "
                 f"{cpu['logical_cores']} cores usable)")
    if cpu["features"] is None:
        lines.append("cpu features: unknown on this platform")
    else:
        lines.append("cpu features: " + " | ".join(f"{name.upper()} = {int(has)}"
                                                   for name, has in cpu["features"].items()))
    if tch["version"] is None:
        lines.append("torch: not installed")
    else:
        lines.append(f"torch: {tch['version']}, CPU kernels {tch['cpu_capability']}, {tch['threads']} threads "
                     f"({tch['interop_threads']} inter-op), oneDNN {_yes(tch['onednn'])}")
        devices = "; ".join(f"{d['index']}: {d['name']} ({d['memory_gib']} GiB, sm {d['capability']})"
                            for d in tch["cuda_devices"])
        lines.append(f"cuda: {devices or 'no device'}"
                     + (f" (torch built for CUDA {tch['cuda_version']})" if tch["cuda_version"] else "")
                     + (", mps available" if tch["mps"] else ""))
    path = info.get("cpu_path")
    if path:
        lines.append(f"bfloat16 products on CPU: {path['path']} ({path['description']}; {path['reason']})")
    blocks = info["block_products"]
    lines.append(f"block products (generate, --numerics ggml): {blocks['path']} path"
                 + (f" (CONVKIT_QDOT_ISA={blocks['forced']})" if blocks["forced"] else
                    " (CONVKIT_QDOT_ISA=avx2 or =scalar forces a lower one)"))
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def env(as_json):
    """Show versions, compiled helpers, CPU features, torch threads and devices."""
    from convkit.sysinfo import system_info

    info = system_info()
    emit(info, as_json=as_json, text=format_env(info))

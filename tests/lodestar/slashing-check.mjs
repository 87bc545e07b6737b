// Judges signings against a fresh Lodestar 1.5.1 slashing-protection database, the way a validator
// client that imported an EIP-3076 interchange would.
//
//   node slashing-check.mjs CASE.json
//
// CASE.json: {"genesis_validators_root": "0x…", "interchange": {…EIP-3076…},
//             "signings": [{"pubkey": "0x…", "block": {"slot": 100, "signing_root": "0x…"}},
//                          {"pubkey": "0x…", "attestation": {"source": 50, "target": 51, "signing_root": "0x…"}}]}
// Prints {"import": "ok" | "<error>", "verdicts": ["allowed" | "refused: <code>", …]} on stdout.
// Each signing is judged after the ones before it (an allowed signing is recorded, as a client does).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fromHexString } from "@chainsafe/ssz";
import { config } from "@lodestar/config/default";
import { LevelDbController } from "@lodestar/db";
import { SlashingProtection } from "@lodestar/validator";

const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ovsb-slashing-"));
const controller = new LevelDbController({ name: dir }, { metrics: null });
await controller.start();
const protection = new SlashingProtection({ config, controller });
const out = { import: "ok", verdicts: [] };
try {
  await protection.importInterchange(input.interchange, fromHexString(input.genesis_validators_root));
} catch (e) {
  out.import = String(e?.type?.code ?? e?.message ?? e);
}
for (const signing of input.signings) {
  const pubkey = fromHexString(signing.pubkey);
  const root = fromHexString(signing.block?.signing_root ?? signing.attestation?.signing_root);
  try {
    if (signing.block) {
      await protection.checkAndInsertBlockProposal(pubkey, { slot: signing.block.slot, signingRoot: root });
    } else {
      const a = signing.attestation;
      await protection.checkAndInsertAttestation(pubkey, { sourceEpoch: a.source, targetEpoch: a.target, signingRoot: root });
    }
    out.verdicts.push("allowed");
  } catch (e) {
    out.verdicts.push(`refused: ${e?.type?.code ?? e?.message ?? e}`);
  }
}
await controller.stop();
fs.rmSync(dir, { recursive: true, force: true });
console.log(JSON.stringify(out));

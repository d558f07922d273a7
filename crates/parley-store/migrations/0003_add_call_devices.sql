-- The device each party's call is bound to (the `deviceId` of the socket that started or
-- accepted it). A call that was active when the server stopped is restored from these at the
-- next start, so the same two devices can resume it; NULL for calls never bound (rows written
-- before this migration, or a callee that never answered).
ALTER TABLE calls ADD COLUMN caller_device TEXT;
ALTER TABLE calls ADD COLUMN callee_device TEXT;
